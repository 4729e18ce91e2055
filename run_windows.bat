@echo off
rem First run: make .venv and install captioner. Every run: start the app (training enabled,
rem datasets from .\data) and open the browser. Extra arguments go to `captioner serve`.
cd /d "%~dp0"
if not exist .venv\Scripts\captioner.exe (
    echo First run: installing captioner into .venv ^(a few minutes^)...
    py -3 -m venv .venv 2>nul || python -m venv .venv || goto :nopython
    .venv\Scripts\python -m pip install --upgrade pip
    .venv\Scripts\python -m pip install . || goto :failed
)
if not exist data mkdir data
.venv\Scripts\captioner serve --open --data-root data %*
goto :eof
:nopython
echo Python 3.11 or newer is needed: install it from python.org and run this again.
pause
exit /b 1
:failed
echo Installing captioner failed; see the messages above.
pause
exit /b 1
